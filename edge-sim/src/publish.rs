//! `edge-sim publish`: sends N distinct valid events of a kind to JetStream and reports them.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::provision::{ensure_event_streams, StreamArgs};
use runtime::publish::{publish_with_id, Outgoing, Published};
use runtime::retry::RetryError;
use runtime::{ConfigError, NatsArgs, NatsSettings, RetryPolicy};
use schema::Kind;
use tokio_util::sync::CancellationToken;

use crate::synthetic::{Synthesizer, SyntheticEvent};

/// Flags of `publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Event kind: wave, weather or carbon.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Kind,
    /// Number of distinct valid events to send.
    #[arg(long)]
    pub count: u64,
    /// Index of the first event; runs with different offsets send different events.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Sites (zones) the events rotate through.
    #[arg(long, default_value_t = 16)]
    pub sites: u64,
    /// Seed of the measurement values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of events sent a second time right away (inside the dedupe window).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_fraction: f64,
    /// Fraction of events sent again after the stream's duplicate window has passed.
    #[arg(long, default_value_t = 0.0)]
    pub republish_after_window_fraction: f64,
    /// Malformed messages to add, as a fraction of --count (truncated JSON, unknown schema
    /// version, out-of-range value, in turn).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_fraction: f64,
    /// Publishes awaiting their ack at once.
    #[arg(long, default_value_t = 512)]
    pub in_flight: usize,
    /// Stop after this long if acks do not arrive (0 = wait forever).
    #[arg(long, default_value = "0s", value_parser = runtime::parse_duration)]
    pub timeout: Duration,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream settings used if the streams must be created.
    #[command(flatten)]
    pub streams: StreamArgs,
}

/// What a publish run sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Distinct valid events sent (and acked).
    pub distinct_valid: u64,
    /// Of those, how many the stream already had (an earlier run sent them).
    pub already_in_stream: u64,
    /// Immediate re-sends, all dropped by the stream's dedupe.
    pub duplicates_in_window: u64,
    /// Of those, how many the stream reported as duplicates.
    pub duplicates_dropped: u64,
    /// Re-sends after the duplicate window, stored again by the stream.
    pub republished_after_window: u64,
    /// Malformed messages sent.
    pub malformed: u64,
    /// New messages the stream stored in total.
    pub stream_messages_added: u64,
}

impl fmt::Display for PublishReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "distinct_valid={} already_in_stream={} duplicates_in_window={} duplicates_dropped={} \
             republished_after_window={} malformed={} stream_messages_added={}",
            self.distinct_valid,
            self.already_in_stream,
            self.duplicates_in_window,
            self.duplicates_dropped,
            self.republished_after_window,
            self.malformed,
            self.stream_messages_added
        )
    }
}

/// Publishes as `args` says and returns what was sent.
///
/// # Errors
///
/// Bad flags, an unreachable NATS, or shutdown before every ack arrived.
pub async fn publish(
    args: &PublishArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<PublishReport> {
    for (setting, value) in [
        ("--duplicate-fraction", args.duplicate_fraction),
        (
            "--republish-after-window-fraction",
            args.republish_after_window_fraction,
        ),
        ("--malformed-fraction", args.malformed_fraction),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(ConfigError::new(
                "edge-sim fraction",
                format!("{setting} {value} is outside 0..=1"),
            )
            .into());
        }
    }
    if args.sites == 0 || args.in_flight == 0 {
        return Err(ConfigError::new("--sites/--in-flight", "must be at least 1").into());
    }
    let nats = NatsSettings::from_args(&args.nats)?;
    let client = nats.connect("edge-sim").await?;
    let jetstream = async_nats::jetstream::new(client.clone());
    ensure_event_streams(&jetstream, &args.streams.policy()).await?;
    let stop = shutdown.child_token();
    if !args.timeout.is_zero() {
        let stop = stop.clone();
        let timeout = args.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            stop.cancel();
        });
    }

    let synthesizer = Synthesizer {
        kind: args.kind,
        sites: args.sites,
        seed: args.seed,
    };
    let ingested_at = chrono::Utc::now();
    let mut choices = StdRng::seed_from_u64(args.seed.wrapping_add(args.offset));
    let mut report = PublishReport::default();
    let mut republish = Vec::new();
    // Sent after every original is acked, so the stream has each id before its repeat.
    let mut duplicates = Vec::new();
    let malformed_total = (args.count as f64 * args.malformed_fraction).round() as u64;
    let malformed_every = args
        .count
        .checked_div(malformed_total)
        .map_or(0, |every| every.max(1));

    let mut malformed_sent = 0_u64;
    let originals = (args.offset..args.offset + args.count).flat_map(|index| {
        let event = synthesizer.event(index, ingested_at);
        if choices.random_bool(args.duplicate_fraction) {
            duplicates.push(event.clone());
        }
        if choices.random_bool(args.republish_after_window_fraction) {
            republish.push(event.clone());
        }
        let position = index - args.offset;
        let add_malformed = malformed_every > 0
            && malformed_sent < malformed_total
            && position.is_multiple_of(malformed_every);
        malformed_sent += u64::from(add_malformed);
        let malformed =
            add_malformed.then(|| (synthesizer.malformed(index, ingested_at), Sent::Malformed));
        std::iter::once((event, Sent::Distinct)).chain(malformed)
    });
    send_all(&jetstream, originals, &stop, args.in_flight, &mut report).await?;
    let duplicates = duplicates.into_iter().map(|event| (event, Sent::Duplicate));
    send_all(&jetstream, duplicates, &stop, args.in_flight, &mut report).await?;

    if !republish.is_empty() {
        let window = jetstream
            .get_stream(args.kind.stream_name())
            .await
            .context("reading the stream's duplicate window")?
            .cached_info()
            .config
            .duplicate_window;
        tracing::info!(
            ?window,
            count = republish.len(),
            "waiting out the duplicate window before re-publishing"
        );
        tokio::select! {
            () = tokio::time::sleep(window + Duration::from_millis(1500)) => {}
            () = stop.cancelled() => anyhow::bail!("stopped while waiting to re-publish"),
        }
        let republish = republish
            .into_iter()
            .map(|event| (event, Sent::Republished));
        send_all(&jetstream, republish, &stop, args.in_flight, &mut report).await?;
    }
    client
        .flush()
        .await
        .context("flushing the NATS connection")?;
    Ok(report)
}

#[derive(Debug, Clone, Copy)]
enum Sent {
    Distinct,
    Duplicate,
    Republished,
    Malformed,
}

/// Publishes `events` with at most `in_flight` awaiting their ack, settling each into `report`.
async fn send_all(
    jetstream: &async_nats::jetstream::Context,
    events: impl Iterator<Item = (SyntheticEvent, Sent)>,
    stop: &CancellationToken,
    in_flight: usize,
    report: &mut PublishReport,
) -> anyhow::Result<()> {
    let mut pending = FuturesUnordered::new();
    for (event, sent) in events {
        pending.push(send(jetstream, event, stop, sent));
        while pending.len() >= in_flight {
            settle(pending.next().await, report)?;
        }
    }
    while let Some(result) = pending.next().await {
        settle(Some(result), report)?;
    }
    Ok(())
}

async fn send(
    jetstream: &async_nats::jetstream::Context,
    event: SyntheticEvent,
    stop: &CancellationToken,
    sent: Sent,
) -> (Sent, Result<Published, RetryError<async_nats::Error>>) {
    let outgoing = Outgoing {
        subject: event.subject,
        message_id: event.event_id,
        headers: async_nats::HeaderMap::new(),
        payload: event.payload,
    };
    (
        sent,
        publish_with_id(jetstream, outgoing, RetryPolicy::PUBLISH, stop).await,
    )
}

fn settle(
    result: Option<(Sent, Result<Published, RetryError<async_nats::Error>>)>,
    report: &mut PublishReport,
) -> anyhow::Result<()> {
    let Some((sent, result)) = result else {
        return Ok(());
    };
    let published = match result {
        Ok(published) => published,
        Err(RetryError::Cancelled) => anyhow::bail!("stopped before every publish was acked; run again with the same flags to finish (re-sends are deduplicated)"),
        Err(RetryError::Failed(error)) => return Err(anyhow::anyhow!(error).context("publish failed")),
    };
    let stored = matches!(published, Published::Stored { .. });
    report.stream_messages_added += u64::from(stored);
    match sent {
        Sent::Distinct => {
            report.distinct_valid += 1;
            report.already_in_stream += u64::from(!stored);
        }
        Sent::Duplicate => {
            report.duplicates_in_window += 1;
            report.duplicates_dropped += u64::from(!stored);
        }
        Sent::Republished => report.republished_after_window += 1,
        Sent::Malformed => report.malformed += 1,
    }
    Ok(())
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::from_name(text)
        .ok_or_else(|| format!("unknown kind '{text}'; expected wave, weather or carbon"))
}
