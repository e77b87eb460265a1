//! NomadWave's wire contract: the normalized events every ingest binary publishes and the sink
//! writes.
//!
//! This crate is pure: serde types, units, validation and deterministic ids, with no I/O and no
//! async runtime. Everything that crosses JetStream is defined here once.
//!
//! Layout:
//! - [`kind`]: the three event kinds and the stream/subject names derived from them;
//! - [`observation`]: the measurement types ([`WaveObservation`], [`WeatherObservation`],
//!   [`CarbonIntensity`]) and their validation;
//! - [`event`]: the envelope ([`Event`]) with schema version, source, ingest time and id;
//! - [`encoded_layout`]: the fast path of [`Event::decode`] for the bytes [`Event::encode`]
//!   writes;
//! - [`id`]: the deterministic [`EventId`];
//! - [`members`]: how an observation's members sit in the flat event object;
//! - [`timestamp`]: the fast path for reading and writing RFC 3339 UTC times;
//! - [`dead_letter`]: header names used when a message is dead-lettered.

pub mod dead_letter;
pub mod encoded_layout;
pub mod event;
pub mod id;
pub mod kind;
pub mod members;
pub mod observation;
pub mod timestamp;

pub use event::{DecodeError, Event, MAX_EVENT_BYTES};
pub use id::{ContentHasher, EventId};
pub use kind::Kind;
pub use observation::{
    CarbonIntensity, Observation, ValidationError, WaveObservation, WeatherObservation,
};

/// The schema version this build writes and the only one it accepts.
///
/// Bump it when a field changes meaning or type; consumers dead-letter versions they do not know.
pub const SCHEMA_VERSION: u16 = 1;
