//! The delivery core: the rules that make "exactly once" true, as pure functions over plain
//! values, so each one has a unit test that names it. No I/O, no clock, no async here; the
//! orchestration in [`crate::consume`], [`crate::recovery`] and [`crate::writer`] asks these
//! functions what to do and does it.
//!
//! Vocabulary:
//! - a [`StreamSequence`] numbers a message in its stream; a [`ConsumerSequence`] numbers a
//!   delivery of one consumer (a redelivery gets a new one);
//! - an [`Incarnation`] names one life of a stream: its creation time. A stream deleted and
//!   recreated starts again at sequence 1 with a new incarnation, so a row's identity is the
//!   [`StreamPosition`] `(incarnation, sequence)`, never the sequence alone.

use std::fmt;

use schema::Kind;
use twox_hash::XxHash3_128;

/// A message's sequence in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamSequence(pub u64);

/// A delivery's sequence in its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConsumerSequence(pub u64);

/// One life of a stream: its creation time as nanoseconds since the Unix epoch, as nats-server
/// reports it in stream info. 0 ([`Incarnation::LEGACY`]) marks rows written before the sink
/// stored incarnations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// Rows from before incarnations were stored.
    pub const LEGACY: Incarnation = Incarnation(0);

    /// The incarnation of a stream created at `created_unix_nanos` (never 0: a stream created
    /// at the epoch instant itself is given 1, so it cannot pass for legacy rows).
    pub fn from_created_nanos(created_unix_nanos: i128) -> Incarnation {
        Incarnation(u64::try_from(created_unix_nanos).unwrap_or(0).max(1))
    }

    /// Whole seconds since the epoch, for comparisons with `DateTime` columns.
    pub fn created_unix_seconds(self) -> i64 {
        (self.0 / 1_000_000_000) as i64
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// A row's identity: where in which life of its stream the event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPosition {
    /// The stream's incarnation.
    pub incarnation: Incarnation,
    /// The message's stream sequence.
    pub sequence: StreamSequence,
}

/// Which rows of a table the exact check and the watermark may take for the current stream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckScope {
    /// The current incarnation.
    pub current: Incarnation,
    /// Whether legacy rows (incarnation 0) may be the current stream's.
    pub include_legacy: bool,
}

impl CheckScope {
    /// Rule **legacy rows**: rows written before incarnations were stored count as the current
    /// stream's only if the newest of them was ingested at or after the stream was created.
    /// A stream created after every legacy row cannot hold them, and taking them for its own
    /// would skip new events with the same sequences (a loss); the opposite mistake only lets
    /// a redelivery be written again, which `FINAL` collapses, so doubt excludes them.
    pub fn decide(current: Incarnation, newest_legacy_ingest_unix: Option<i64>) -> CheckScope {
        CheckScope {
            current,
            include_legacy: newest_legacy_ingest_unix
                .is_some_and(|newest| newest >= current.created_unix_seconds()),
        }
    }

    /// The incarnations to look in, as a SQL list.
    pub fn sql_list(&self) -> String {
        if self.include_legacy {
            format!("{}, {}", Incarnation::LEGACY.0, self.current.0)
        } else {
            self.current.0.to_string()
        }
    }
}

/// Rule **check**: a message is looked up in the table before it is written when JetStream
/// delivered it before (`delivered > 1`) or when its sequence is at or below the highest one
/// the table held for this incarnation when the sink started (the watermark), which is what a
/// recreated consumer or a replay ahead of the consumer leaves. A first delivery above the
/// watermark cannot be in the table and is written without a look.
pub fn needs_check(delivered: i64, sequence: StreamSequence, watermark: StreamSequence) -> bool {
    delivered > 1 || sequence <= watermark
}

/// Follows the consumer sequences of a consumer's deliveries since the last re-read of its
/// un-acked range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryTracker {
    next: ConsumerSequence,
}

impl DeliveryTracker {
    /// After a re-read that covered every delivery up to `delivered`.
    pub fn after_reread(delivered: ConsumerSequence) -> DeliveryTracker {
        DeliveryTracker {
            next: ConsumerSequence(delivered.0 + 1),
        }
    }

    /// The consumer sequence the next delivery carries if this sink got every one.
    pub fn next(&self) -> ConsumerSequence {
        self.next
    }

    /// Rule **gap**: nats-server numbers every delivery of a consumer, so consecutive numbers
    /// prove no other process received one. A delivery numbered past the next expected one
    /// means some went elsewhere (a paused predecessor's pull request) or were lost in a
    /// reconnect; returns the first missing number. Numbers at or below the expected one were
    /// covered by the last re-read (redeliveries) and are no gap.
    pub fn observe(&mut self, delivery: ConsumerSequence) -> Option<ConsumerSequence> {
        let gap = (delivery > self.next).then_some(self.next);
        self.next = self.next.max(ConsumerSequence(delivery.0 + 1));
        gap
    }
}

/// How settled batches are acknowledged; follows the consumer's own ack policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// `AckPolicy::All` (consumers this version creates): one ack, of the highest sequence.
    HighestOfBatch,
    /// `AckPolicy::Explicit` (consumers created by earlier versions): every message.
    EachMessage,
    /// A re-read through an ephemeral consumer: nothing to acknowledge.
    Nothing,
}

/// What became of one message of a settled batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Written by this batch's INSERT.
    Written,
    /// Already in the table (an earlier attempt or process wrote it): not written again.
    AlreadyApplied,
    /// Not a storable event: its dead letter was stored, with this reason.
    DeadLettered {
        /// The dead-letter reason.
        reason: &'static str,
    },
}

/// What to acknowledge once every message of a batch has a [`MessageOutcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckDecision {
    /// Ack this sequence, which under `AckPolicy::All` acks every earlier delivery too.
    Highest(StreamSequence),
    /// Ack every message.
    Each,
    /// Nothing to ack.
    Nothing,
    /// Ack nothing until the consumer's un-acked range was re-read: a delivery since the last
    /// re-read did not reach this sink, and acking now would ack it unwritten.
    HoldForReread {
        /// The first consumer sequence that did not arrive.
        missing: ConsumerSequence,
    },
}

/// Rule **ack after settle**: a batch is acknowledged only once each message is written,
/// already present or dead-lettered (the caller guarantees that by calling this last). Rule
/// **ack all**: under `AckPolicy::All` one ack of the highest sequence stands for the batch,
/// unless a delivery went missing since the last re-read.
pub fn ack_decision(
    mode: AckMode,
    highest: Option<StreamSequence>,
    gap: Option<ConsumerSequence>,
) -> AckDecision {
    match (mode, highest, gap) {
        (AckMode::Nothing, _, _) | (_, None, _) => AckDecision::Nothing,
        (AckMode::EachMessage, Some(_), _) => AckDecision::Each,
        (AckMode::HighestOfBatch, Some(_), Some(missing)) => AckDecision::HoldForReread { missing },
        (AckMode::HighestOfBatch, Some(highest), None) => AckDecision::Highest(highest),
    }
}

/// The part of a consumer delivered but not acked: what must be settled before the next ack
/// under `AckPolicy::All`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnackedRange {
    /// First stream sequence (the ack floor's successor).
    pub first: StreamSequence,
    /// Last delivered stream sequence.
    pub last: StreamSequence,
}

/// Rule **settle before first ack**: a sink re-reads the range between the consumer's ack
/// floor and its last delivered message whenever anything in it is un-acked.
pub fn unacked_range(
    ack_floor: StreamSequence,
    delivered: StreamSequence,
    num_ack_pending: usize,
) -> Option<UnackedRange> {
    (num_ack_pending > 0 && delivered > ack_floor).then_some(UnackedRange {
        first: StreamSequence(ack_floor.0 + 1),
        last: delivered,
    })
}

/// What a durable consumer of a stream has settled, as its info reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerProgress {
    /// Consumer name.
    pub name: String,
    /// Its filter subject (empty: the whole stream).
    pub filter: String,
    /// Its ack floor.
    pub ack_floor: StreamSequence,
    /// Messages it has not delivered yet.
    pub num_pending: u64,
    /// Messages delivered and not acked.
    pub num_ack_pending: usize,
}

impl ConsumerProgress {
    /// The highest sequence up to which this consumer's sink has written everything: its ack
    /// floor, or the stream's last sequence when it has nothing pending at all (a filtered
    /// consumer's floor stays at its subjects' last message).
    pub fn settled_through(&self, stream_last: StreamSequence) -> StreamSequence {
        if self.num_pending == 0 && self.num_ack_pending == 0 {
            stream_last.max(self.ack_floor)
        } else {
            self.ack_floor
        }
    }
}

/// Why a replay into the live tables would write a sequence twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayAheadOfSink {
    /// The lagging consumer.
    pub consumer: String,
    /// What it has settled.
    pub settled_through: StreamSequence,
    /// Where the replay was asked to end.
    pub requested_last: StreamSequence,
}

/// Rule **replay behind the live sink**: a replay into the tables a live sink writes may only
/// cover what every durable consumer of the stream has settled. Beyond that the live sink
/// writes first deliveries without a look (rule **check**), so both would write them. With no
/// explicit end the replay stops at that point; an explicit end beyond it is refused.
pub fn live_replay_end(
    requested_last: Option<StreamSequence>,
    stream_last: StreamSequence,
    consumers: &[ConsumerProgress],
) -> Result<StreamSequence, ReplayAheadOfSink> {
    let slowest = consumers
        .iter()
        .map(|consumer| (consumer.settled_through(stream_last), consumer))
        .min_by_key(|(settled, _)| *settled);
    let wanted = requested_last.unwrap_or(stream_last).min(stream_last);
    match slowest {
        None => Ok(wanted),
        Some((settled, _)) if wanted <= settled => Ok(wanted),
        Some((settled, _)) if requested_last.is_none() => Ok(settled),
        Some((settled, consumer)) => Err(ReplayAheadOfSink {
            consumer: consumer.name.clone(),
            settled_through: settled,
            requested_last: wanted,
        }),
    }
}

/// Rule **one layout at a time**: sink consumers of one stream (named after the same base,
/// `<base>` unpartitioned or `<base>-p<N>` per partition) whose subjects overlap each other's
/// would each deliver, and each sink write, the same messages. Returns the names of those that
/// overlap `own`; an unpartitioned consumer (no filter) overlaps every partition's.
pub fn overlapping_sink_consumers<'a>(
    base: &str,
    own_name: &str,
    own_filter: &str,
    existing: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let is_sink_consumer = |name: &str| {
        name == base
            || name
                .strip_prefix(base)
                .and_then(|rest| rest.strip_prefix("-p"))
                .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
    };
    existing
        .into_iter()
        .filter(|(name, _)| *name != own_name && is_sink_consumer(name))
        .filter(|(_, filter)| filter.is_empty() || own_filter.is_empty() || *filter == own_filter)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Names one INSERT: the stream, its incarnation, the sequence range and a hash of what the
/// rows hold (each row's sequence and event id, which hashes its content). Used as the INSERT's
/// `query_id` prefix and as `insert_deduplication_token`: a token that named only sequences
/// would let a server drop an INSERT of other content at the same sequences (a recreated
/// stream) as a repeat.
///
/// The hash is XXH3-128 (seed 0, a fixed specification, so every sink version and instance
/// names the same rows alike), not a cryptographic one: its input is positions the server
/// assigned and ids that already hash content, and it only has to tell batches of one
/// stream range apart. SHA-256 here cost the sink about a tenth of its instructions per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchIdentity(String);

impl BatchIdentity {
    /// The identity of the rows `(sequence, event id)` of `kind` in `incarnation`.
    pub fn new<'a>(
        kind: Kind,
        incarnation: Incarnation,
        rows: impl IntoIterator<Item = (StreamSequence, &'a str)>,
    ) -> BatchIdentity {
        let mut content = XxHash3_128::new();
        content.write(&incarnation.0.to_be_bytes());
        let mut range: Option<(u64, u64)> = None;
        for (sequence, event_id) in rows {
            content.write(&sequence.0.to_be_bytes());
            content.write(event_id.as_bytes());
            content.write(&[0]);
            range = Some(match range {
                None => (sequence.0, sequence.0),
                Some((first, last)) => (first.min(sequence.0), last.max(sequence.0)),
            });
        }
        let (first, last) = range.unwrap_or((0, 0));
        // 64 bits of the hash, as the SHA-256 prefix before it: the range already narrows
        // which batches could ever be compared.
        let hash = (content.finish_128() >> 64) as u64;
        BatchIdentity(format!(
            "nomadwave-{}-{incarnation}-{first}-{last}-{hash:016x}",
            kind.stream_name()
        ))
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchIdentity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(value: u64) -> StreamSequence {
        StreamSequence(value)
    }

    #[test]
    fn rule_check_looks_up_redeliveries_and_everything_up_to_the_watermark() {
        assert!(
            !needs_check(1, seq(11), seq(10)),
            "first delivery above the watermark"
        );
        assert!(needs_check(2, seq(11), seq(10)), "a redelivery");
        assert!(needs_check(1, seq(10), seq(10)), "at the watermark");
        assert!(needs_check(1, seq(3), seq(10)), "below the watermark");
        assert!(!needs_check(1, seq(1), seq(0)), "empty table");
    }

    #[test]
    fn rule_legacy_rows_count_only_when_ingested_after_the_stream_was_created() {
        let created = Incarnation(1_700_000_000 * 1_000_000_000 + 5);
        let scope = CheckScope::decide(created, Some(1_700_000_100));
        assert!(scope.include_legacy);
        assert_eq!(scope.sql_list(), format!("0, {}", created.0));
        let recreated = CheckScope::decide(created, Some(1_699_999_999));
        assert!(
            !recreated.include_legacy,
            "older rows belong to a stream before this one"
        );
        assert_eq!(recreated.sql_list(), created.0.to_string());
        assert!(!CheckScope::decide(created, None).include_legacy);
    }

    #[test]
    fn incarnation_is_never_legacy() {
        assert_eq!(Incarnation::from_created_nanos(0), Incarnation(1));
        assert_eq!(Incarnation::from_created_nanos(-5), Incarnation(1));
        assert_eq!(Incarnation::from_created_nanos(1_234), Incarnation(1_234));
        assert_eq!(Incarnation(3_500_000_000).created_unix_seconds(), 3);
    }

    #[test]
    fn rule_gap_follows_consecutive_consumer_sequences() {
        let mut tracker = DeliveryTracker::after_reread(ConsumerSequence(10));
        assert_eq!(tracker.observe(ConsumerSequence(11)), None);
        assert_eq!(tracker.observe(ConsumerSequence(12)), None);
        assert_eq!(
            tracker.observe(ConsumerSequence(15)),
            Some(ConsumerSequence(13)),
            "13 and 14 went elsewhere"
        );
        assert_eq!(tracker.next(), ConsumerSequence(16));
        assert_eq!(
            tracker.observe(ConsumerSequence(9)),
            None,
            "covered by the re-read"
        );
        assert_eq!(tracker.next(), ConsumerSequence(16));
    }

    #[test]
    fn rule_ack_all_acks_the_highest_unless_a_delivery_is_missing() {
        assert_eq!(
            ack_decision(AckMode::HighestOfBatch, Some(seq(40)), None),
            AckDecision::Highest(seq(40))
        );
        assert_eq!(
            ack_decision(
                AckMode::HighestOfBatch,
                Some(seq(40)),
                Some(ConsumerSequence(7))
            ),
            AckDecision::HoldForReread {
                missing: ConsumerSequence(7)
            }
        );
        assert_eq!(
            ack_decision(
                AckMode::EachMessage,
                Some(seq(40)),
                Some(ConsumerSequence(7))
            ),
            AckDecision::Each,
            "explicit acks name each message, so a gap cannot ack another's"
        );
        assert_eq!(
            ack_decision(AckMode::Nothing, Some(seq(1)), None),
            AckDecision::Nothing
        );
        assert_eq!(
            ack_decision(AckMode::HighestOfBatch, None, None),
            AckDecision::Nothing
        );
    }

    #[test]
    fn rule_settle_before_first_ack_rereads_between_floor_and_delivered() {
        assert_eq!(
            unacked_range(seq(100), seq(250), 150),
            Some(UnackedRange {
                first: seq(101),
                last: seq(250)
            })
        );
        assert_eq!(unacked_range(seq(250), seq(250), 0), None);
        assert_eq!(
            unacked_range(seq(100), seq(250), 0),
            None,
            "nothing un-acked"
        );
    }

    fn progress(name: &str, floor: u64, pending: u64, ack_pending: usize) -> ConsumerProgress {
        ConsumerProgress {
            name: name.into(),
            filter: String::new(),
            ack_floor: seq(floor),
            num_pending: pending,
            num_ack_pending: ack_pending,
        }
    }

    #[test]
    fn rule_replay_behind_the_live_sink() {
        let lagging = [progress("sink-clickhouse", 600, 400, 0)];
        assert_eq!(live_replay_end(None, seq(1000), &lagging), Ok(seq(600)));
        assert_eq!(
            live_replay_end(Some(seq(500)), seq(1000), &lagging),
            Ok(seq(500))
        );
        assert_eq!(
            live_replay_end(Some(seq(900)), seq(1000), &lagging),
            Err(ReplayAheadOfSink {
                consumer: "sink-clickhouse".into(),
                settled_through: seq(600),
                requested_last: seq(900)
            })
        );
        let idle_partition = [progress("sink-clickhouse-p1", 40, 0, 0)];
        assert_eq!(
            live_replay_end(None, seq(1000), &idle_partition),
            Ok(seq(1000)),
            "a consumer with nothing pending has settled the whole stream"
        );
        assert_eq!(
            live_replay_end(Some(seq(5000)), seq(1000), &[]),
            Ok(seq(1000))
        );
    }

    #[test]
    fn rule_one_layout_at_a_time() {
        let existing = [
            ("sink-clickhouse", ""),
            ("sink-clickhouse-p0", "nomadwave.wave.0.*"),
            ("sink-clickhouse-p1", "nomadwave.wave.1.*"),
            ("sink-clickhouse-px", ""),
            ("other-app", ""),
        ];
        assert_eq!(
            overlapping_sink_consumers(
                "sink-clickhouse",
                "sink-clickhouse-p0",
                "nomadwave.wave.0.*",
                existing
            ),
            vec!["sink-clickhouse".to_owned()],
            "a partition overlaps the unpartitioned consumer, not its sibling partitions"
        );
        assert_eq!(
            overlapping_sink_consumers("sink-clickhouse", "sink-clickhouse", "", existing),
            vec![
                "sink-clickhouse-p0".to_owned(),
                "sink-clickhouse-p1".to_owned()
            ]
        );
        assert!(overlapping_sink_consumers(
            "sink-clickhouse",
            "sink-clickhouse",
            "",
            [("sink-clickhouse", "")]
        )
        .is_empty());
    }

    #[test]
    fn batch_identity_names_incarnation_range_and_content() {
        let rows = [(seq(5), "a"), (seq(6), "b")];
        let identity = BatchIdentity::new(Kind::Wave, Incarnation(77), rows);
        assert!(
            identity.as_str().starts_with("nomadwave-WAVE-77-5-6-"),
            "{identity}"
        );
        assert_eq!(
            identity,
            BatchIdentity::new(Kind::Wave, Incarnation(77), rows)
        );
        let other_content =
            BatchIdentity::new(Kind::Wave, Incarnation(77), [(seq(5), "a"), (seq(6), "c")]);
        assert_ne!(identity, other_content, "same sequences, other events");
        let other_stream = BatchIdentity::new(Kind::Wave, Incarnation(78), rows);
        assert_ne!(identity, other_stream, "same sequences, recreated stream");
    }
}
