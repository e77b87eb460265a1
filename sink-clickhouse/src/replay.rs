//! `sink-clickhouse replay`: re-reads a range of a stream into the live tables or another
//! database through the same idempotent write (the exact per-sequence check, then INSERT),
//! paced so a large backlog does not flood ClickHouse with parts, and verified at the end.
//!
//! Verification compares, for the replayed range, what the stream holds against what the
//! target holds: the number of valid events (one row per stream sequence) and a checksum over
//! their natural keys (site or zone, `observed_at`, source), each key hashed with SHA-256 and
//! the first 8 bytes summed, so order does not matter.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use futures::StreamExt as _;
use runtime::retry::{retry, RetryError};
use runtime::{ConfigError, NatsArgs, NatsSettings, RetryPolicy};
use schema::{CarbonIntensity, Event, Kind, WaveObservation, WeatherObservation};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{ClickHouseArgs, ClickHouseSettings};
use crate::database::{Database, DatabaseError};
use crate::delivery::{
    self, CheckScope, ConsumerProgress, Incarnation, StreamPosition, StreamSequence,
};
use crate::positions;
use crate::rows::StoredObservation;
use crate::writer::{self, PendingRow, WriteTarget};

/// Flags of `replay`. Every flag also reads an environment variable; an empty variable counts
/// as unset (how a Nomad dispatch passes an optional meta value it was not given).
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Stream to re-read: WAVE, WEATHER or CARBON.
    #[arg(long, env = "REPLAY_STREAM")]
    pub stream: String,
    /// Only subjects matching this filter (e.g. nomadwave.wave.tathra).
    #[arg(long, env = "REPLAY_SUBJECT")]
    pub subject: Option<String>,
    /// First stream sequence [default: the stream's first].
    #[arg(long, env = "REPLAY_FROM_SEQ", conflicts_with = "from_time")]
    pub from_seq: Option<u64>,
    /// First message time (RFC 3339), by the time JetStream stored it.
    #[arg(long, env = "REPLAY_FROM_TIME")]
    pub from_time: Option<DateTime<Utc>>,
    /// Last stream sequence [default: the stream's last when the replay starts].
    #[arg(long, env = "REPLAY_TO_SEQ", conflicts_with = "to_time")]
    pub to_seq: Option<u64>,
    /// Last message time (RFC 3339), by the time JetStream stored it.
    #[arg(long, env = "REPLAY_TO_TIME")]
    pub to_time: Option<DateTime<Utc>>,
    /// Target database [default: --clickhouse-database]; created with its tables if missing.
    #[arg(long, env = "REPLAY_DATABASE")]
    pub database: Option<String>,
    /// Rows per INSERT: large, so a backlog becomes few parts.
    #[arg(long, env = "REPLAY_BATCH_ROWS", default_value_t = 100_000)]
    pub batch_rows: usize,
    /// Upper bound on INSERTs per second.
    #[arg(long, env = "REPLAY_MAX_INSERTS_PER_SECOND", default_value_t = 2.0)]
    pub max_inserts_per_second: f64,
    /// Progress display: a bar on a terminal, log lines otherwise.
    #[arg(long, env = "REPLAY_PROGRESS", value_enum, default_value = "auto")]
    pub progress: ProgressStyle,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// ClickHouse connection.
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

/// The variables `replay` reads; an empty one means unset.
pub const VARIABLES: [&str; 10] = [
    "REPLAY_STREAM",
    "REPLAY_SUBJECT",
    "REPLAY_FROM_SEQ",
    "REPLAY_FROM_TIME",
    "REPLAY_TO_SEQ",
    "REPLAY_TO_TIME",
    "REPLAY_DATABASE",
    "REPLAY_BATCH_ROWS",
    "REPLAY_MAX_INSERTS_PER_SECOND",
    "REPLAY_PROGRESS",
];

/// Removes the [`VARIABLES`] that are set but empty, so clap sees them as unset. Call it at
/// the start of `main`, before any other thread exists.
pub fn forget_empty_variables() {
    for name in VARIABLES {
        if std::env::var_os(name).is_some_and(|value| value.is_empty()) {
            std::env::remove_var(name);
        }
    }
}

/// `--progress` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressStyle {
    /// A bar when stderr is a terminal, else log lines.
    Auto,
    /// Always a bar.
    Bar,
    /// Always log lines.
    Log,
}

/// The range a replay covers, resolved against the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First sequence delivered.
    pub first: u64,
    /// Last sequence to deliver.
    pub last: u64,
}

/// What a replay read and wrote, and how the target compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Stream replayed.
    pub stream: String,
    /// Target database.
    pub database: String,
    /// Sequences covered.
    pub range: Option<Range>,
    /// Messages read.
    pub read: u64,
    /// Messages that are not valid events (the live sink dead-lettered them).
    pub invalid: u64,
    /// Rows written by this run.
    pub written: u64,
    /// Rows already in the target.
    pub already_present: u64,
    /// INSERT statements.
    pub inserts: u64,
    /// Valid events in the range and their key checksum.
    pub source: Tally,
    /// Rows in the target for those sequences and their key checksum.
    pub target: Tally,
}

impl ReplayReport {
    /// Whether the target matches the source.
    pub fn verified(&self) -> bool {
        self.source == self.target
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (first, last) = self.range.map_or((0, 0), |range| (range.first, range.last));
        write!(
            f,
            "stream={} database={} first_seq={first} last_seq={last} read={} invalid={} written={} already_present={} inserts={} \
             source_count={} source_checksum={:016x} target_count={} target_checksum={:016x} verified={}",
            self.stream,
            self.database,
            self.read,
            self.invalid,
            self.written,
            self.already_present,
            self.inserts,
            self.source.count,
            self.source.checksum,
            self.target.count,
            self.target.checksum,
            self.verified()
        )
    }
}

/// A count and an order-independent checksum of natural keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Number of keys.
    pub count: u64,
    /// Wrapping sum of the keys' hashes.
    pub checksum: u64,
}

impl Tally {
    fn add(&mut self, site: &str, observed_at: u32, source: &str) {
        let mut digest = Sha256::new();
        digest.update(site.as_bytes());
        digest.update([0]);
        digest.update(observed_at.to_be_bytes());
        digest.update([0]);
        digest.update(source.as_bytes());
        let hash = digest.finalize();
        let mut first = [0_u8; 8];
        first.copy_from_slice(&hash[..8]);
        self.count += 1;
        self.checksum = self.checksum.wrapping_add(u64::from_be_bytes(first));
    }
}

/// Runs a replay; the report is printed by the caller.
///
/// # Errors
///
/// Bad flags (exit 64), an unreachable server, or a permanent ClickHouse error. A verification
/// mismatch is not an error here: see [`ReplayReport::verified`].
pub async fn replay(
    args: &ReplayArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ReplayReport> {
    let kind = Kind::from_stream_name(args.stream.trim()).ok_or_else(|| {
        ConfigError::new(
            "--stream/REPLAY_STREAM",
            format!("'{}' is not WAVE, WEATHER or CARBON", args.stream),
        )
    })?;
    if args.batch_rows == 0 {
        return Err(ConfigError::new("--batch-rows/REPLAY_BATCH_ROWS", "must be above 0").into());
    }
    if !(args.max_inserts_per_second > 0.0 && args.max_inserts_per_second.is_finite()) {
        return Err(ConfigError::new(
            "--max-inserts-per-second/REPLAY_MAX_INSERTS_PER_SECOND",
            "must be a positive number",
        )
        .into());
    }
    let mut clickhouse_args = args.clickhouse.clone();
    if let Some(database) = args
        .database
        .as_ref()
        .filter(|name| !name.trim().is_empty())
    {
        clickhouse_args.clickhouse_database = database.trim().to_owned();
    }
    // The live sink's database is --clickhouse-database/CLICKHOUSE_DATABASE; a replay into it
    // must stay behind the live consumers (rule **replay behind the live sink**).
    let into_live_tables =
        clickhouse_args.clickhouse_database == args.clickhouse.clickhouse_database;
    let clickhouse = ClickHouseSettings::from_args(&clickhouse_args)?;
    let nats = NatsSettings::from_args(&args.nats)?;
    match kind {
        Kind::Wave => {
            replay_kind::<WaveObservation>(args, &nats, &clickhouse, into_live_tables, shutdown)
                .await
        }
        Kind::Weather => {
            replay_kind::<WeatherObservation>(args, &nats, &clickhouse, into_live_tables, shutdown)
                .await
        }
        Kind::Carbon => {
            replay_kind::<CarbonIntensity>(args, &nats, &clickhouse, into_live_tables, shutdown)
                .await
        }
    }
}

async fn replay_kind<O: StoredObservation>(
    args: &ReplayArgs,
    nats: &NatsSettings,
    clickhouse: &ClickHouseSettings,
    into_live_tables: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<ReplayReport> {
    let kind = O::KIND;
    let database = Database::connect(clickhouse)
        .await
        .with_context(|| format!("ClickHouse at {}", clickhouse.url))?;
    database.migrate().await?;
    let client = nats.connect("sink-clickhouse-replay").await?;
    let jetstream = jetstream::new(client.clone());
    let mut stream = jetstream
        .get_stream(kind.stream_name())
        .await
        .with_context(|| {
            format!(
                "stream {} not found on {}",
                kind.stream_name(),
                nats.display_urls()
            )
        })?;
    let info = stream
        .info()
        .await
        .context("cannot read the stream's state")?
        .clone();
    let mut report = ReplayReport {
        stream: kind.stream_name().to_owned(),
        database: database.name().to_owned(),
        range: None,
        read: 0,
        invalid: 0,
        written: 0,
        already_present: 0,
        inserts: 0,
        source: Tally::default(),
        target: Tally::default(),
    };
    let stream_last = info.state.last_sequence;
    let incarnation = Incarnation::from_created_nanos(info.created.unix_timestamp_nanos());
    let lives = retry(
        RetryPolicy::INSERT.named("incarnations"),
        &shutdown,
        DatabaseError::class,
        || database.incarnations::<O>(),
    )
    .await
    .map_err(retry_failure)?;
    let scope = CheckScope::decide(
        incarnation,
        lives
            .iter()
            .find(|life| life.incarnation == Incarnation::LEGACY.0)
            .map(|life| i64::from(life.newest_ingest)),
    );
    let to_seq = if into_live_tables {
        let mut consumers = durable_consumers(&stream).await?;
        // A sink reading without acks (`--positions table`) has settled through its record.
        let recorded = positions::recorded_for_stream(&jetstream, kind, incarnation)
            .await
            .context("cannot read the positions of sinks that read without acks")?;
        consumers.extend(
            recorded
                .into_iter()
                .map(|(name, settled)| ConsumerProgress {
                    name: format!("{name} (--positions table)"),
                    filter: String::new(),
                    ack_floor: settled,
                    num_pending: stream_last.saturating_sub(settled.0),
                    num_ack_pending: 0,
                }),
        );
        delivery::live_replay_end(
            args.to_seq.map(StreamSequence),
            StreamSequence(stream_last),
            &consumers,
        )
        .map_err(|refusal| {
            ConfigError::new(
                "--to-seq/REPLAY_TO_SEQ",
                format!(
                    "the replay would write {} up to sequence {} into the live tables of {}, but consumer {} has settled only up to {}: the live sink writes the rest without a look, so both would write them. Replay up to {} (or leave --to-seq out), wait until the sink caught up, or replay into another --database",
                    kind.stream_name(),
                    refusal.requested_last.0,
                    database.name(),
                    refusal.consumer,
                    refusal.settled_through.0,
                    refusal.settled_through.0
                ),
            )
        })?
        .0
    } else {
        args.to_seq.unwrap_or(stream_last).min(stream_last)
    };
    if into_live_tables && args.to_seq.is_none_or(|asked| asked > to_seq) && to_seq < stream_last {
        tracing::warn!(
            stream = kind.stream_name(),
            to_seq,
            stream_last,
            "replay into the live tables stops where the slowest live consumer has settled; the live sink writes the rest"
        );
    }
    let deliver_policy = match (args.from_seq, args.from_time) {
        (Some(sequence), _) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: sequence.max(1),
        },
        (None, Some(time)) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp(time.timestamp())
                .map_err(|_| ConfigError::new("--from-time/REPLAY_FROM_TIME", "out of range"))?,
        },
        (None, None) => consumer::DeliverPolicy::All,
    };
    if info.state.messages == 0 || to_seq == 0 || args.from_seq.is_some_and(|from| from > to_seq) {
        tracing::warn!(
            stream = kind.stream_name(),
            "nothing to replay in this range"
        );
        return Ok(report);
    }
    let filter_subject = args
        .subject
        .clone()
        .filter(|subject| !subject.trim().is_empty())
        .unwrap_or_default();
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            filter_subject,
            ..Default::default()
        })
        .await
        .context("cannot create the replay consumer")?;
    let mut messages = ordered.messages().await.context("cannot read the stream")?;

    let expected_first = args
        .from_seq
        .unwrap_or(info.state.first_sequence)
        .max(info.state.first_sequence);
    let progress = Progress::new(args.progress, to_seq.saturating_sub(expected_first) + 1);
    let pacing = Duration::from_secs_f64(1.0 / args.max_inserts_per_second);
    let mut last_insert: Option<Instant> = None;
    let mut batch: Vec<PendingRow<O::Row>> = Vec::with_capacity(args.batch_rows.min(1 << 20));
    // One bit per sequence from the first one requested: which ones were valid events of the
    // replayed subjects (a set of u64 would cost ~30 bytes each on a long range).
    let mut seen = SequenceSet::new(expected_first);
    let mut range: Option<Range> = None;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("interrupted; rerun the same command: rows already written are skipped"),
            next = tokio::time::timeout(Duration::from_secs(5), messages.next()) => next,
        };
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                return Err(anyhow::anyhow!(error).context("reading the stream failed"))
            }
            Ok(None) => break,
            // No message for 5 s: the filter has nothing more in range.
            Err(_) => break,
        };
        let Ok(meta) = message.info() else { continue };
        let sequence = meta.stream_sequence;
        let published = DateTime::<Utc>::from_timestamp(
            meta.published.unix_timestamp(),
            meta.published.nanosecond(),
        );
        let past_end = sequence > to_seq
            || args
                .to_time
                .is_some_and(|end| published.is_some_and(|at| at > end));
        if past_end {
            break;
        }
        range = Some(Range {
            first: range.map_or(sequence, |range| range.first),
            last: sequence,
        });
        report.read += 1;
        progress.set(sequence.saturating_sub(expected_first) + 1);
        match Event::<O>::decode(&message.payload) {
            Ok(event) => {
                report.source.add(
                    event.observation.site(),
                    event.observation.observed_at().timestamp() as u32,
                    &event.source,
                );
                let position = StreamPosition {
                    incarnation,
                    sequence: StreamSequence(sequence),
                };
                match O::to_row(event, position) {
                    Ok(row) => {
                        seen.insert(sequence);
                        batch.push(PendingRow {
                            sequence: StreamSequence(sequence),
                            row,
                        });
                    }
                    // Dead-lettered by the live sink, like an undecodable message.
                    Err(_) => report.invalid += 1,
                }
            }
            Err(_) => report.invalid += 1,
        }
        if batch.len() >= args.batch_rows {
            flush::<O>(
                &database,
                scope,
                &mut batch,
                &mut report,
                &mut last_insert,
                pacing,
                &shutdown,
            )
            .await?;
        }
        // `pending` counts what the filter still has after this message.
        if sequence >= to_seq || meta.pending == 0 {
            break;
        }
    }
    flush::<O>(
        &database,
        scope,
        &mut batch,
        &mut report,
        &mut last_insert,
        pacing,
        &shutdown,
    )
    .await?;
    progress.finish();
    report.range = range;

    if let Some(range) = range {
        // In windows, so verification memory stays bounded however long the range is.
        let mut window_first = range.first;
        while window_first <= range.last {
            let window_last = range
                .last
                .min(window_first.saturating_add(VERIFY_WINDOW - 1));
            let keys = retry(
                RetryPolicy::INSERT.named("verify"),
                &shutdown,
                DatabaseError::class,
                || {
                    database.natural_keys::<O>(
                        scope,
                        StreamSequence(window_first),
                        StreamSequence(window_last),
                    )
                },
            )
            .await
            .map_err(retry_failure)?;
            for (sequence, site, observed_at, source) in keys {
                if seen.contains(sequence) {
                    report.target.add(&site, observed_at, &source);
                }
            }
            window_first = window_last.saturating_add(1);
        }
    }
    runtime::service::flush_before_exit(&client, "nothing: the replay only reads").await;
    Ok(report)
}

/// Sequences per verification query.
const VERIFY_WINDOW: u64 = 500_000;

/// A set of stream sequences at or above `base`, one bit each.
struct SequenceSet {
    base: u64,
    bits: Vec<u64>,
}

impl SequenceSet {
    fn new(base: u64) -> SequenceSet {
        SequenceSet {
            base,
            bits: Vec::new(),
        }
    }

    fn insert(&mut self, sequence: u64) {
        let Some(offset) = sequence.checked_sub(self.base) else {
            return;
        };
        let word = (offset / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (offset % 64);
    }

    fn contains(&self, sequence: u64) -> bool {
        sequence.checked_sub(self.base).is_some_and(|offset| {
            self.bits
                .get((offset / 64) as usize)
                .is_some_and(|word| word & (1 << (offset % 64)) != 0)
        })
    }
}

/// What a failed retried replay query means for the command.
fn retry_failure(error: RetryError<DatabaseError>) -> anyhow::Error {
    match error {
        RetryError::Failed(error) => anyhow::Error::new(error),
        RetryError::Cancelled => {
            anyhow::anyhow!("interrupted; rerun the same command: rows already written are skipped")
        }
    }
}

/// What every durable consumer of the stream has settled.
async fn durable_consumers(
    stream: &jetstream::stream::Stream,
) -> anyhow::Result<Vec<ConsumerProgress>> {
    let mut listed = stream.consumers();
    let mut consumers = Vec::new();
    while let Some(info) = listed.next().await {
        let info = info.context("cannot list the stream's consumers")?;
        if info.config.durable_name.is_none() {
            continue;
        }
        consumers.push(ConsumerProgress {
            name: info.name.clone(),
            filter: info.config.filter_subject.clone(),
            ack_floor: StreamSequence(info.ack_floor.stream_sequence),
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending,
        });
    }
    Ok(consumers)
}

/// Replay INSERTs: the live policy, bounded, so a replay job fails instead of waiting forever.
const REPLAY_INSERT_POLICY: RetryPolicy = RetryPolicy {
    max_retries: Some(20),
    ..RetryPolicy::INSERT.named("replay_insert")
};

async fn flush<O: StoredObservation>(
    database: &Database,
    scope: CheckScope,
    batch: &mut Vec<PendingRow<O::Row>>,
    report: &mut ReplayReport,
    last_insert: &mut Option<Instant>,
    pacing: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // At most --max-inserts-per-second: wait out the rest of the previous insert's slot.
    if let Some(previous) = *last_insert {
        let ready = previous + pacing;
        tokio::select! {
            () = tokio::time::sleep_until(ready.into()) => {}
            () = shutdown.cancelled() => anyhow::bail!("interrupted"),
        }
    }
    *last_insert = Some(Instant::now());
    let rows = std::mem::take(batch);
    let target = WriteTarget {
        database,
        scope,
        policy: REPLAY_INSERT_POLICY,
        stop: shutdown,
        health: None,
        label: "replay-",
    };
    // Always the exact check: a replay never knows what is already there.
    let outcome = writer::write_rows::<O>(&target, &rows, true)
        .await
        .map_err(|error| retry_failure(error).context("replay insert failed"))?;
    report.inserts += 1;
    report.written += outcome.written as u64;
    report.already_present += outcome.already_present as u64;
    Ok(())
}

/// A progress bar on a terminal, log lines every few seconds otherwise.
enum Progress {
    Bar(indicatif::ProgressBar),
    Log {
        total: u64,
        started: Instant,
        last: std::cell::Cell<Instant>,
        done: std::cell::Cell<u64>,
    },
}

impl Progress {
    fn new(style: ProgressStyle, total: u64) -> Progress {
        let bar = match style {
            ProgressStyle::Bar => true,
            ProgressStyle::Log => false,
            ProgressStyle::Auto => std::io::stderr().is_terminal(),
        };
        if bar {
            let progress = indicatif::ProgressBar::new(total);
            if let Ok(template) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} seq  {per_sec}  ETA {eta}",
            ) {
                progress.set_style(template);
            }
            Progress::Bar(progress)
        } else {
            let now = Instant::now();
            Progress::Log {
                total,
                started: now,
                last: std::cell::Cell::new(now),
                done: std::cell::Cell::new(0),
            }
        }
    }

    fn set(&self, done: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(done),
            Progress::Log {
                total,
                started,
                last,
                done: counter,
            } => {
                counter.set(done);
                if last.get().elapsed() >= Duration::from_secs(5) {
                    last.set(Instant::now());
                    let elapsed = started.elapsed().as_secs_f64().max(0.001);
                    let rate = done as f64 / elapsed;
                    let eta = if rate > 0.0 {
                        (total.saturating_sub(done)) as f64 / rate
                    } else {
                        0.0
                    };
                    tracing::info!(
                        done,
                        total,
                        rate_per_s = rate.round() as u64,
                        eta_s = eta.round() as u64,
                        "replay progress"
                    );
                }
            }
        }
    }

    fn finish(&self) {
        match self {
            Progress::Bar(bar) => bar.finish(),
            Progress::Log {
                total,
                started,
                done,
                ..
            } => {
                tracing::info!(
                    done = done.get(),
                    total,
                    seconds = started.elapsed().as_secs_f64(),
                    "replay read done"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_set_holds_exactly_what_was_inserted() {
        let mut set = SequenceSet::new(1001);
        for sequence in [1001, 1064, 1065, 2_000_000, 999] {
            set.insert(sequence);
        }
        for present in [1001, 1064, 1065, 2_000_000] {
            assert!(set.contains(present), "{present}");
        }
        for absent in [999, 1000, 1002, 1063, 1066, 1_999_999, 5_000_000] {
            assert!(!set.contains(absent), "{absent}");
        }
    }
}
