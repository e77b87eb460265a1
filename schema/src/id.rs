//! Deterministic event ids.
//!
//! An id is a hash of the natural key (kind, source, site, observed_at) and of every measurement,
//! written field by field in a fixed order. It therefore does not depend on JSON field order,
//! whitespace or the time of ingest, and any changed value gives a new id. Publishers send it as
//! `Nats-Msg-Id`, so JetStream drops re-publishes inside the stream's duplicate window.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kind::Kind;

/// Hex-encoded 128-bit prefix of a SHA-256 over the natural key and content of an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// The id as text, as sent in `Nats-Msg-Id` and stored in ClickHouse.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as owned text, without copying it (a row stores the id it was decoded with).
    pub fn into_string(self) -> String {
        self.0
    }

    /// The id an event's `event_id` member holds. Like the transparent serde impl, it takes any
    /// string: ids other producers computed are carried as they are, not checked.
    pub(crate) fn from_wire(id: String) -> EventId {
        EventId(id)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Feeds fields into an event id in a fixed, unambiguous encoding.
///
/// Every field is written with a one-byte tag and a fixed-size or length-prefixed value, so
/// two different field sequences can never produce the same bytes.
pub struct ContentHasher {
    digest: Sha256,
}

impl ContentHasher {
    /// Starts an id over the natural key of an event.
    pub fn new(kind: Kind, source: &str, site: &str, observed_at: DateTime<Utc>) -> ContentHasher {
        let mut hasher = ContentHasher {
            digest: Sha256::new(),
        };
        hasher.digest.update(b"nomadwave-event-id-v1");
        hasher.text(kind.as_str());
        hasher.text(source);
        hasher.text(site);
        hasher.digest.update(observed_at.timestamp().to_be_bytes());
        hasher
            .digest
            .update(observed_at.timestamp_subsec_nanos().to_be_bytes());
        hasher
    }

    /// Adds a text field.
    pub fn text(&mut self, value: &str) {
        self.digest.update([b's']);
        self.digest.update((value.len() as u64).to_be_bytes());
        self.digest.update(value.as_bytes());
    }

    /// Adds a number that is always present.
    pub fn number(&mut self, value: f64) {
        self.digest.update([b'f']);
        // Negative zero and zero are the same measurement.
        let normalized = if value == 0.0 { 0.0_f64 } else { value };
        self.digest.update(normalized.to_bits().to_be_bytes());
    }

    /// Adds a number that may be missing; a missing value hashes differently from any number.
    pub fn optional_number(&mut self, value: Option<f64>) {
        match value {
            Some(number) => self.number(number),
            None => self.digest.update([b'n']),
        }
    }

    /// Adds a flag that may be missing.
    pub fn optional_flag(&mut self, value: Option<bool>) {
        let byte = match value {
            Some(true) => b't',
            Some(false) => b'F',
            None => b'n',
        };
        self.digest.update([byte]);
    }

    /// Finishes the id.
    pub fn finish(self) -> EventId {
        let hash = self.digest.finalize();
        let mut hex = String::with_capacity(32);
        for byte in &hash[..16] {
            hex.push(HEX_DIGITS[usize::from(byte >> 4)] as char);
            hex.push(HEX_DIGITS[usize::from(byte & 0x0f)] as char);
        }
        EventId(hex)
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
