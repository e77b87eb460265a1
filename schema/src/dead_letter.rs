//! Header names carried by dead-lettered messages.
//!
//! A dead letter keeps the original payload byte for byte; these headers say why it was rejected
//! and where it came from, so an operator can fix the producer and republish it.

/// Machine-readable reason, also the `reason` label of `nomadwave_dead_letters_total`.
pub const REASON: &str = "Nomadwave-Dead-Letter-Reason";
/// Human-readable detail of the rejection (the decoder's error message).
pub const DETAIL: &str = "Nomadwave-Dead-Letter-Detail";
/// Stream the original message was read from.
pub const SOURCE_STREAM: &str = "Nomadwave-Source-Stream";
/// Stream sequence of the original message.
pub const SOURCE_SEQUENCE: &str = "Nomadwave-Source-Sequence";
/// Subject (or MQTT topic) the original message was published on.
pub const SOURCE_SUBJECT: &str = "Nomadwave-Source-Subject";

/// The MQTT topic a dead-lettered bridge message arrived on.
pub const SOURCE_TOPIC: &str = "Nomadwave-Source-Topic";
